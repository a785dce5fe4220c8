"""What the subpackages share (private to fastgauss; see CONTRIBUTING.md).

    arrays       user input as validated tensors: DLPack, shapes, finiteness, probe stacks
    backend      the one routing point between the Triton kernels and the PyTorch paths
    device       a ``device=`` argument checked before any work
    distributed  torch.distributed helpers
    dtypes       the one dtype-promotion rule of the PyTorch paths (``compute_dtype``)
    plots        matplotlib figures without touching global state
    precision    the one precision vocabulary (names, meanings, which family takes which)
    rows         memory-bounded row passes
    seeds        the one seed-mixing rule
    sigma        the one noise-level rule (``per_sample``, ``level_list``)
"""
