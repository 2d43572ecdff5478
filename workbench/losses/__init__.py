"""Training losses, one per file, each a pure function on tensors (plus, for the embedders, a module shell).

* :mod:`workbench.losses.listwise` -- list-wise embedding losses on graded relevance (``ws2``, ``listnet``,
  ``lambdaloss``, ``graded_infonce``), a registry read from the file names;
* :mod:`workbench.losses.hypo` -- HyPO's online reverse-KL term (Song et al. 2024).
"""
