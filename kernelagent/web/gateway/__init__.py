"""Jupyter-compatible kernel gateway: the ``/api/kernels/{id}/channels`` WebSocket and its wire."""
