"""isnet: ISNet-family saliency models from a checkpoint or ONNX file to a fast, verified deployment.

The stages are subpackages, and data flows through them in this order:
:mod:`isnet.export` -> :mod:`isnet.build_in` -> :mod:`isnet.runtime` -> :mod:`isnet.eval`, with
:mod:`isnet.tools` as the front door (the ``isnet`` command) and :mod:`isnet.core` holding what
every stage shares (the error type, atomic writes, hashing, typed configs).
"""
