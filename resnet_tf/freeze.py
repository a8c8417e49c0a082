"""A Keras model's inference graph frozen into constants, with every BatchNorm that follows a
convolution folded into the convolution's weights.

TensorFlow 1's graph transforms did this (``fold_batch_norms``) and TensorFlow 2 has no
successor; PyTorch's ``torch.compile`` freezing and MXNet's oneDNN partitioning do the same
for their frameworks. With BatchNorm gone, TensorFlow's oneDNN remapper fuses each
``Conv2D + BiasAdd [+ AddV2] [+ Relu]`` into one convolution, the residual sum included,
where a ``Conv2D + FusedBatchNormV3`` fusion would leave the sum and its ReLU as separate
passes over memory. Inference only: the weights are constants of the graph.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2
from tensorflow.python.framework import tensor_util
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

_CONVS = ("Conv2D",)
_NHWC = (b"NHWC", b"")  # an unset data_format is NHWC
_RESHAPES = ("Reshape", "Squeeze", "ExpandDims")
_PASS_THROUGH = ("Identity", "IdentityN")  # IdentityN: what tf.custom_gradient leaves behind


def _name(ref: str) -> tuple[str, int]:
    """``("node", output index)`` of a graph input reference like ``node:1``."""
    node, _, index = ref.lstrip("^").partition(":")
    return node, int(index or 0)


def fold_batch_norms(graph_def: graph_pb2.GraphDef) -> int:
    """Fold, in place, every inference ``FusedBatchNormV3`` of ``graph_def`` whose input is a
    ``Conv2D`` (NHWC, constant filter, optionally a constant ``BiasAdd``) that feeds nothing
    else: the conv reads a new filter scaled by ``gamma / sqrt(var + eps)`` per output channel,
    and the BatchNorm becomes a ``BiasAdd`` of ``(bias - mean) * scale + beta``. Returns how
    many were folded; any other BatchNorm (a pre-activation block's, one in training mode) is
    left as it is, and no existing constant is changed."""
    nodes = {n.name: n for n in graph_def.node}
    consumers = Counter(_name(i)[0] for n in graph_def.node for i in n.input)
    side_outputs = {_name(i)[0] for n in graph_def.node for i in n.input if _name(i)[1] != 0}

    def producer(ref: str) -> tuple[node_def_pb2.NodeDef, int, bool]:
        """The node behind ``ref`` through identities, its output, and whether that chain
        feeds nothing else."""
        node, index = _name(ref)
        n, alone = nodes[node], True
        while n.op in _PASS_THROUGH:
            alone = alone and consumers[n.name] == 1
            node, index = _name(n.input[index if n.op == "IdentityN" else 0])
            n = nodes[node]
        return n, index, alone

    def vector(ref: str) -> Optional[np.ndarray]:
        """The value of a constant per-channel vector behind ``ref`` (through identities and
        the reshapes Keras puts on a bias), or None where it is computed."""
        n = producer(ref)[0]
        while n.op in _RESHAPES:
            n = producer(n.input[0])[0]
        return tensor_util.MakeNdarray(n.attr["value"].tensor).reshape(-1) if n.op == "Const" else None

    def constant(name: str, value: np.ndarray, device: str) -> str:
        node = graph_def.node.add(name=name, op="Const", device=device)
        node.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
        node.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(value))
        return name

    folded = 0
    for bn in list(graph_def.node):
        if (bn.op != "FusedBatchNormV3" or bn.attr["is_training"].b or bn.name in side_outputs
                or bn.attr["data_format"].s not in _NHWC):
            continue
        conv, index, alone = producer(bn.input[0])
        conv_bias = None
        if conv.op == "BiasAdd" and index == 0 and alone and consumers[conv.name] == 1:
            conv_bias = vector(conv.input[1])
            if conv_bias is None or conv.attr["data_format"].s not in _NHWC:
                continue
            conv, index, alone = producer(conv.input[0])
        if (conv.op not in _CONVS or index != 0 or not alone or consumers[conv.name] != 1
                or conv.attr["data_format"].s not in _NHWC):
            continue
        params = [vector(ref) for ref in bn.input[1:5]]
        filt = producer(conv.input[1])[0]
        if any(p is None for p in params) or filt.op != "Const":
            continue
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        scale = gamma / np.sqrt(var + bn.attr["epsilon"].f)
        shift = beta - mean * scale if conv_bias is None else beta + (conv_bias - mean) * scale
        w = tensor_util.MakeNdarray(filt.attr["value"].tensor)
        conv.input[1] = constant(f"{bn.name}/folded_filter", (w * scale).astype(w.dtype), conv.device)
        bias = constant(f"{bn.name}/folded_bias", shift.astype(w.dtype), bn.device)
        dtype, name, device = bn.attr["T"].type, bn.name, bn.device
        bn.Clear()
        bn.name, bn.op, bn.device = name, "BiasAdd", device
        bn.input.extend([conv.name, bias])
        bn.attr["T"].type = dtype
        bn.attr["data_format"].s = b"NHWC"
        folded += 1
    return folded


def frozen_forward(model: Any, input_shape: tuple[int, ...], dtype: Any = tf.float32
                   ) -> tuple[Callable[[Any], Any], int]:
    """``(forward(x) -> logits, BatchNorms folded)``: ``model(x, training=False)`` for NHWC
    inputs of ``input_shape``, as a frozen graph with its BatchNorms folded into the convs."""
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec(input_shape, dtype))
    frozen = convert_variables_to_constants_v2(concrete)
    graph_def = frozen.graph.as_graph_def()
    folded = fold_batch_norms(graph_def)
    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    return wrapped.prune(frozen.inputs[0].name, frozen.outputs[0].name), folded
