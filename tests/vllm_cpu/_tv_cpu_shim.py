"""Let PyPI's torchvision import beside torch+cpu (loaded by a .pth in the vLLM test venv only).

torchvision's `_C.so` links CUDA libraries, so its operators never load here; yet its
`_meta_registrations` registers fake kernels for `torchvision::nms` and `qnms` without checking, and
the import dies with "operator torchvision::nms does not exist". Defining the two schemas just before
torchvision's first import lets it load with `_has_ops() == False`: the tensor transforms vLLM's
Qwen2-VL/Omni processors use work, `ops.nms` would not (nothing here calls it).
"""

from __future__ import annotations

import sys

_library = None


class _DefineTorchvisionOps:
    def find_spec(self, name, path=None, target=None):
        global _library
        if name == "torchvision":
            sys.meta_path.remove(self)
            import torch

            _library = torch.library.Library("torchvision", "FRAGMENT")
            for op in ("nms", "qnms"):
                _library.define(op + "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        return None


sys.meta_path.insert(0, _DefineTorchvisionOps())
