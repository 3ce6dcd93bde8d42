"""Models on this machine's hardware: resolution, backends, hardware detection, batching.

Knows nothing of peers or MCP. Heavy libraries (torch, transformers, onnxruntime) are
imported lazily so that the CLI starts fast.
"""
