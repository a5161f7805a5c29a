"""What the upstream client costs per short answer: CPU of `LLM.stream` for 20-token streams.

    .venv/bin/python bench/upstream_client.py       # a fake model on 127.0.0.1:18111

The fake model (tests/fake_model.py, its own process) answers at once with 20 tokens and no
gaps, so the figure is our process's CPU only: building the request, the SDK's send, aiohttp,
reading the server-sent events, parsing the chunks. 40 streams at a time, 10 rounds, five
repetitions; printed per stream for:
- `app`: LLM.stream as the app runs it (app/llm.py: ChunkStream, the prebuilt request options);
- `sdk decoder`: the same with the SDK's own AsyncStream (its line decoder and anyio drain).

Figures only, no assertions: the machine is shared, so compare the two within one run.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import llm  # noqa: E402

PORT = 18111
CONCURRENT, ROUNDS, REPEATS = 40, 10, 5


def wait_port(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


async def cpu_per_stream(client: llm.LLM) -> list[float]:
    messages = [{"role": "user", "content": "Do you ship to Germany?"}]

    async def one() -> None:
        async for _ in client.stream(messages):
            pass

    for _ in range(50):  # warm: connections open, code paths hot
        await one()
    figures = []
    for _ in range(REPEATS):
        started = time.process_time()
        for _ in range(ROUNDS):
            await asyncio.gather(*(one() for _ in range(CONCURRENT)))
        figures.append((time.process_time() - started) / (ROUNDS * CONCURRENT) * 1000)
    return figures


async def measure() -> None:
    base_url = f"http://127.0.0.1:{PORT}/ttft=0,tokens=20,gap=0/v1"
    client = llm.LLM(api_key="bench", base_url=base_url, model="bench", timeout_s=30,
                     max_tokens=100, temperature=0.2)
    app_stream = llm.ChunkStream
    try:
        for name, stream_cls in (("app", app_stream), ("sdk decoder", openai.AsyncStream[object]),
                                 ("app", app_stream), ("sdk decoder", openai.AsyncStream[object])):
            llm.ChunkStream = stream_cls  # type: ignore[misc]
            figures = await cpu_per_stream(client)
            print(f"{name:12s} CPU ms per 20-token stream: min {min(figures):.3f},"
                  f" median {sorted(figures)[len(figures) // 2]:.3f}")
    finally:
        llm.ChunkStream = app_stream  # type: ignore[misc]
        await client.aclose()


def main() -> None:
    model = subprocess.Popen([sys.executable, "-m", "tests.fake_model", "--host", "127.0.0.1",
                              "--port", str(PORT), "--ttft-ms", "0", "--tokens", "20",
                              "--gap-ms", "0"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        if not wait_port(PORT, 30):
            raise SystemExit("the fake model did not start")
        import uvloop

        uvloop.run(measure())
    finally:
        model.terminate()
        model.wait(10)


if __name__ == "__main__":
    main()
