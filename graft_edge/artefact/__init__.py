"""What an exported artefact is, for the exporter that writes it and the runtimes that read it.

`record`: the metadata record (`ArtefactMeta`), its JSON sidecar and the batch range it accepts;
`onnx_file`: an ONNX file's embedded metadata and external-weights file; `embedder`: the `Embedder`
protocol every runtime implements and its `EmbedderInfo`; `versions`: the software that shaped it.
Which files make up one artefact, per runtime family, is the runtime's (`graft_edge.runtime.families`).
"""
