"""IPython magics: ``%difflens "prompt" --model toy --layers 0:12:2 --seeds 0,1 --steps 20`` and ``%%difflens``
(one prompt per line). Options mirror ``Lens.run``; errors are shown as one readable line, not a traceback."""

from __future__ import annotations

import shlex

from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring


@magics_class
class DiffLensMagics(Magics):
    """Keeps one Lens per model so repeated magics reuse the loaded pipeline and its result cache."""

    def __init__(self, shell):
        super().__init__(shell)
        self._lenses: dict[str, object] = {}

    def _lens(self, model: str):
        if model not in self._lenses:
            import difflens_widgets as dl

            self._lenses[model] = dl.Lens(dl.load_pipeline(model))
        return self._lenses[model]

    @magic_arguments()
    @argument("prompt", nargs="*", help="the prompt (quote it); in %%difflens, one prompt per line of the cell")
    @argument("--model", default="toy", help="'toy', a pipeline folder or a cached hub id")
    @argument("--layers", default=None, help="e.g. 0:12:2 or 0,4,8 (default: all)")
    @argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1")
    @argument("--steps", type=int, default=20, help="denoising steps")
    @argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    @argument("--negative", default=None, help="negative prompt")
    @argument("--no-final-norm", action="store_true", help="ablation: skip the encoder's final norm")
    @line_cell_magic
    def difflens(self, line: str, cell: str | None = None):
        """Run Diffusion Lens and show the layer grid; the result is stored in the variable ``_difflens``."""
        try:
            args = parse_argstring(self.difflens, line)
        except Exception as err:  # argparse's UsageError: show it plainly
            print(f"difflens: {err}")
            return None
        prompts = [" ".join(shlex.split(" ".join(args.prompt)))] if args.prompt else []
        if cell is not None:
            prompts = [p.strip() for p in cell.splitlines() if p.strip()]
        if not prompts:
            print('difflens: give a prompt, e.g. %difflens "a red circle left of a blue square"')
            return None
        try:
            lens = self._lens(args.model)
            results = lens.run(prompts, layers=args.layers, seeds=args.seeds, num_inference_steps=args.steps,
                               guidance_scale=args.guidance, negative_prompt=args.negative,
                               final_norm=not args.no_final_norm)
        except (ValueError, TypeError, FileNotFoundError, KeyError) as err:
            print(f"difflens: {err}")
            return None
        from IPython.display import display

        for result in results:
            print(result.prompt)
            display(result.grid())
        self.shell.user_ns["_difflens"] = results[0] if len(results) == 1 else results
        return None


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(DiffLensMagics)


def unload_ipython_extension(ipython) -> None:
    magics = ipython.magics_manager.magics
    for kind in ("line", "cell"):
        magics[kind].pop("difflens", None)
