"""What backbones, heads and datamodules all build on, free of Lightning: shared constants
(``core.constants``), layers (``conv``, ``relu6``), activation recomputation
(``grad_checkpoint``) and the inference fast path (``fuse``)."""
