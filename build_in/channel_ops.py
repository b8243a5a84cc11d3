"""What graph ops do to a feature map's channels and to its quantization: one table for the int8 code.

Outlier detection, equalisation, calibration, drift measurement and both backends' layer searches
all ask "does a channel pass through this op unchanged?" in slightly different senses. Each sense
is a named set here, derived from one table, so a new op is taught to all of them at once.
"""

from __future__ import annotations

# ONNX ops by what they do to channel c of their first input:
#   scale-commuting: output channel c depends only on input channel c, and a positive scale of
#     the input scales the output by the same factor (equalisation can move a scale through them);
#   value-preserving: values are kept or selected, never mixed across channels, so an outlier
#     channel arrives unchanged at the output (the same range describes both sides).
_ONNX_OPS = {
    # op: (scale-commuting, value-preserving)
    "Relu": (True, True),
    "LeakyRelu": (True, False),
    "Clip": (False, True),  # its bounds do not scale
    "MaxPool": (True, True),
    "AveragePool": (True, True),
    "GlobalMaxPool": (True, False),
    "GlobalAveragePool": (True, False),
    "Resize": (True, True),
    "Upsample": (True, False),
    "Identity": (True, False),
    "Reshape": (False, True),  # may move channels to other axes: no per-channel scale through it
    "Transpose": (False, True),
    "Squeeze": (False, True),
    "Unsqueeze": (False, True),
    "Flatten": (False, True),
    "Slice": (False, True),
}

# Equalisation moves a per-channel scale through these (isnet.build_in.equalize).
SCALE_COMMUTING = frozenset(op for op, (scales, _) in _ONNX_OPS.items() if scales)
# ONNX Runtime's QDQ quantizer removes these activations, giving their output's range to their input
# (``QDQRemovableActivation``).
ORT_REMOVABLE_ACTIVATIONS = frozenset({"Relu", "Clip"})
# ... and quantizes these ops' outputs with their input's parameters ("direct 8-bit" ops,
# ``QDQDirect8BitOp``); TopK too, though it reorders values along an axis.
ORT_SAME_AS_INPUT = frozenset({"MaxPool", "Resize", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten",
                               "AveragePool", "Slice", "TopK"})
# A tensor and the outputs of these ops share one range in a QDQ graph and carry the same channels:
# keeping one float means keeping the others float (outliers), and an error measured behind one
# belongs to the node in front (drift by layer).
RANGE_SHARING = frozenset(op for op, (_, preserves) in _ONNX_OPS.items() if preserves) & (
    ORT_REMOVABLE_ACTIVATIONS | ORT_SAME_AS_INPUT)
# Ops that read only a tensor's shape: a scaled channel does not change what they compute.
VALUE_BLIND = frozenset({"Shape", "Size"})

# OpenVINO op types NNCF quantizes through (it places the FakeQuantize before them, not between them
# and the convolution reading their output): the RANGE_SHARING ops in OpenVINO's names, plus the
# concatenations and splits NNCF also treats so.
NNCF_QUANTIZATION_AGNOSTIC = frozenset({"Relu", "MaxPool", "Interpolate", "Reshape", "Transpose", "Squeeze",
                                        "Unsqueeze", "StridedSlice", "Concat", "Split", "VariadicSplit"})
