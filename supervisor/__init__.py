"""The sidecar daemon inside every preview container: reports through Redis, obeys commands."""
