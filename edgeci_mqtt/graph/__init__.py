"""Any CNN as one graph of spatial ops: import (ONNX files), regions, and execution with torch.

:mod:`.ops` (what each op computes, as geometry), :mod:`.graph` (the graph and the regions
that flow back through it), :mod:`.onnx_reader` (files in), :mod:`.run` and
:mod:`.torch_ops` (execution on regions). docs/GRAPH.md says how it fits the planner.
"""
