"""Self-hosted AI live-chat support for online stores."""
