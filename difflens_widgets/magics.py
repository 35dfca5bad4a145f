"""IPython magics: ``%difflens "prompt" --model toy --layers 0:12:2 --seeds 0,1 --steps 20`` shows a LensDashboard
already running; ``%%difflens`` takes one prompt per line (one dashboard each; they share the model and take turns).
Options mirror ``Lens.run``; errors are shown as one readable line, not a traceback."""

from __future__ import annotations

import shlex

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring


@magics_class
class DiffLensMagics(Magics):
    """Keeps one loaded pipeline per model, so repeated magics do not reload it. Each dashboard gets its own Lens
    (its own Cancel); runs on one pipeline take turns (see ``engine.pipeline_lock``)."""

    def __init__(self, shell):
        super().__init__(shell)
        self._pipelines: dict[str, object] = {}

    def _pipeline(self, model: str):
        if model not in self._pipelines:
            from .models import load_pipeline

            self._pipelines[model] = load_pipeline(model)
        return self._pipelines[model]

    @magic_arguments()
    @argument("prompt", nargs="*", help="the prompt (quote it); in %%difflens, one prompt per line of the cell")
    @argument("--model", default="toy", help="'toy', a pipeline folder or a cached hub id")
    @argument("--layers", default="", help="e.g. 0:12:2 or 0,4,8 (default: all)")
    @argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1")
    @argument("--steps", type=int, default=20, help="denoising steps")
    @argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    @argument("--negative", default="", help="negative prompt")
    @argument("--no-final-norm", action="store_true", help="ablation: skip the encoder's final norm")
    @argument("-h", "--help", action="store_true", help="show this help")
    @line_cell_magic
    def difflens(self, line: str, cell: str | None = None):
        """Show a Diffusion Lens dashboard, already running; it is also stored in the variable ``_difflens``
        (a list for %%difflens), whose ``.result`` is the LensResult once ``.wait()`` returns."""
        try:
            args = parse_argstring(self.difflens, line)
            prompts = [" ".join(shlex.split(" ".join(args.prompt)))] if args.prompt else []
        except UsageError as err:
            print(f"difflens: {err}")
            return None
        except ValueError as err:  # shlex: an unbalanced quote, e.g. %difflens it's red
            print(f"difflens: cannot read the line ({err}); quote the prompt, e.g. %difflens \"it's red\"")
            return None
        if args.help:
            print(self.difflens.parser.format_help())
            return None
        if cell is not None:
            prompts = [p.strip() for p in cell.splitlines() if p.strip()]
        if not prompts:
            print('difflens: give a prompt, e.g. %difflens "a red circle left of a blue square"')
            return None
        from IPython.display import display

        from .widgets import LensDashboard

        dashboards = []
        try:
            pipe = self._pipeline(args.model)
            for prompt in prompts:
                ablation = {"final_norm": False} if args.no_final_norm else {}  # else the pipeline's convention
                dash = LensDashboard(pipe, prompt=prompt, layer_range=args.layers or "", seeds=args.seeds,
                                     steps=args.steps, guidance=args.guidance, negative_prompt=args.negative,
                                     **ablation)
                dash.request()  # validate before showing anything
                dashboards.append(dash)
        except (ValueError, TypeError, FileNotFoundError, OSError) as err:
            print(f"difflens: {err}")
            return None
        for dash in dashboards:
            display(dash)
            dash.run()
        self.shell.user_ns["_difflens"] = dashboards[0] if len(dashboards) == 1 else dashboards
        return None


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(DiffLensMagics)


def unload_ipython_extension(ipython) -> None:
    magics = ipython.magics_manager.magics
    for kind in ("line", "cell"):
        magics[kind].pop("difflens", None)
