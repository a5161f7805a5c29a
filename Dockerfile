# The chat app as a production image: slim Python 3.11, runs as an unprivileged user, applies the
# database migrations at start (`python -m app`), and reports its liveness on /healthz.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/chat

# Dependencies first, from pyproject.toml alone, so that a change to the code reuses this layer.
# The editable install points the `app` package at /srv/chat/app, beside sql/ and web/, which the
# app finds next to its package (a copy in site-packages would not have them).
COPY pyproject.toml ./
RUN mkdir app && touch app/__init__.py \
    && pip install -e . \
    && rm -r app

# Only what the app runs on: BuildKit sends just these paths of the build context.
COPY app ./app
COPY sql ./sql
COPY web ./web

RUN useradd --system --uid 10001 --no-create-home --home-dir /srv/chat chat
USER chat

# Inside a container the app must listen on every interface for nginx to reach it.
ENV HOST=0.0.0.0 \
    PORT=8000 \
    LOG_FORMAT=json
EXPOSE 8000

# The slim image has no curl: ask /healthz with the standard library. Any error or non-2xx
# status raises, and the exit status 1 marks the container unhealthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]

# SIGTERM (docker stop) lets in-flight answers finish for SHUTDOWN_GRACE_S; compose gives the
# container longer than that before it sends SIGKILL (stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app"]
