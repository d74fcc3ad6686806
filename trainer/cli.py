"""`alextrain`: train, evaluate and inspect AlexNet.

The group and its commands, each a short adapter over a library function, in modules by what
they do: trainer/cmd_train.py (run, fig1, demo), trainer/cmd_eval.py (eval, summary,
bench-loader), trainer/cmd_figures.py (kernels, predict, neighbors, report); what they share is
trainer/cli_common.py. Only click and light modules are imported at start: torch, DALI and
webdataset are imported inside the commands that use them, so `alextrain --help` answers at once.
"""

from __future__ import annotations

import warnings

import click

from trainer import cmd_eval, cmd_figures, cmd_train
from trainer.cli_common import Group, one_line_warning


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train and evaluate the paper's AlexNet on shards written by `alexprep`.

    \b
    alextrain run --data OUT --out RUN      train (one device, --model-parallel 2, or torchrun)
    alextrain eval --data OUT --checkpoint RUN [--checkpoint RUN2 ...] [--ten-crop]
    alextrain summary [--arch alexnet|cifar]   layers, neurons, parameters
    alextrain bench-loader --data OUT       is the loader or the model the bottleneck?
    alextrain kernels|predict|neighbors RUN ...   the paper's Figures 3 and 4
    alextrain report RUN                    curves; the run beside Table 2 if ImageNet-1k
    alextrain demo OUT                      all of it, on images it draws (minutes, CPU)

    \b
    A checkpoint argument is a .pt file or a run folder (its best.pt, else last.pt).
    --json prints a command's result as JSON on stdout; --json-out PATH writes it to a file.
    """
    warnings.formatwarning = one_line_warning
    from trainer.stopping import second_interrupt_exits  # no torch: --help stays fast

    second_interrupt_exits("alextrain")


for command in (
    cmd_train.run_cmd,
    cmd_eval.eval_cmd,
    cmd_eval.summary_cmd,
    cmd_eval.bench_loader_cmd,
    cmd_figures.kernels_cmd,
    cmd_figures.predict_cmd,
    cmd_figures.neighbors_cmd,
    cmd_figures.report_cmd,
    cmd_train.fig1_cmd,
    cmd_train.demo_cmd,
):
    main.add_command(command)


if __name__ == "__main__":
    main()
