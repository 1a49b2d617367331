"""The preview gateway: public API, authentication, limits, and the preview proxy."""
