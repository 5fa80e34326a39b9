"""The heads' speed layer, apart from their maths: what makes a large output layer fast.

- `sparse`: row-sparse gradients (`rows`, `sparse_grad`) and `LazyRows`, an optimizer rule applied
  to the rows a step touched only; `Chained` steps it with the dense optimizer as one;
- `grouped`: `class_logits`, a hierarchical head's within-group logits per group present;
- `kernels`: the compiled CPU kernels (kernels.cpp) both of them use where they are built.
A head imports from here; the optimizer table (training/optim.py) composes `LazyRows` itself.
Measured times live in `tools.heads_bench`'s output and the README, not in docstrings.
"""
