"""`alextrain`: train, evaluate and inspect AlexNet."""

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train and evaluate the paper's AlexNet on shards written by `alexprep`."""
