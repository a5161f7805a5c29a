"""The messages sent upstream: the system prompt, the conversation so far, the question.

The system prompt itself is built per question from the store profile and the knowledge base
(app/store_profile.py); nothing secret goes in it.
"""

from __future__ import annotations

from collections.abc import Sequence


def build_messages(system_prompt: str, history: Sequence[tuple[str, str]],
                   question: str) -> list[dict[str, str]]:
    """System first, then the conversation so far (oldest first), then the new question."""
    messages = [{"role": "system", "content": system_prompt}]
    for sender, text in history:
        messages.append({"role": "user" if sender == "user" else "assistant", "content": text})
    messages.append({"role": "user", "content": question})
    return messages
