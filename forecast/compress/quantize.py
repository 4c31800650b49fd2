"""int8 weights: ONNX Runtime's dynamic quantisation of an exported graph.

`quantize_dynamic` stores the weights of MatMul/Gemm as int8 with a per-tensor scale and quantises the
activations at run time (MatMulInteger / DynamicQuantizeLinear), and stores embedding tables (Gather)
as int8. Measured on this project's CPU it was the fastest int8 path (2.7x on one thread for a Linear
stack): `torch.ao` dynamic quantisation is deprecated in torch 2.13, and torchao's int8 runs slower
than fp32 on CPU unless compiled (pytorch/ao#4365). The gain depends on VNNI and shrinks with more
threads (onnxruntime#10153), so candidates are always timed at the device's thread count.
Weights use 7 bits (`reduce_range`): without VNNI, the u8 x s8 multiply-add of AVX2 saturates its
16-bit sums, which cost a tiny transformer a forecast correlation of 0.987 with fp32 here; with
7-bit weights it is 0.9999 (tests/test_compress_export.py).
Einsum (the gated fusion) and the attention's softmax stay fp32.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

OPS = ["MatMul", "Gemm", "Gather"]


def int8(src: Path, dst: Path) -> Path:
    """Write the dynamically int8-quantised graph of `src` to `dst` (a single file); returns dst."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # "consider pre-processing": shapes are inferred below
    try:
        with tempfile.TemporaryDirectory() as tmp:
            quantize_dynamic(str(src), str(Path(tmp) / "q.onnx"), weight_type=QuantType.QInt8, reduce_range=True,
                             op_types_to_quantize=OPS, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            model = onnx.load(str(Path(tmp) / "q.onnx"))
    finally:
        root.level = level
    del model.graph.value_info[:]
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(dst), save_as_external_data=False)
    return dst
