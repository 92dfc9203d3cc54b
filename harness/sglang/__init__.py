"""SGLang's kernels as released: fetch a release wheel, load its EP-MoE kernel file unmodified
with stand-ins for the few ``sglang.*`` names it imports, and bind its functions and Triton
kernels to the harness's ops by parameter name.

- ``release``: ``resolve(version or wheel) -> Release`` (download with pip, cache under the
  user's cache folder, locate the kernel file by the paths releases used) and
  ``load_kernel_file(path)`` (execute a file with the stand-ins; also used by ``sglang:PATH``).
- ``standins``: the stand-in ``sglang.*`` modules (a table in its docstring) and the scoped
  import hook that serves them.
- ``bind``: binding by signature (``bind_op``, ``Unbindable``) and the per-op table
  ``OP_BINDINGS`` of what each op can supply and what each release renamed or added.
"""
