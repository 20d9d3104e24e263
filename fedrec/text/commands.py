"""``fedrec text encode``: encode a dataset's item texts into the embedding cache and report how."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the ``text`` command group to the fedrec CLI."""
    text_app = typer.Typer(help="Item texts and the pretrained text encoder.", no_args_is_help=True)
    app.add_typer(text_app, name="text")

    @text_app.command("encode")
    def encode(
        dataset: Annotated[str, typer.Argument(help="Dataset name: ml-100k, lastfm-2k, synthetic, table, ...")],
        data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Folder with the dataset (or its parent).")] = None,
        path: Annotated[Optional[Path], typer.Option("--path", help="table: the CSV/TSV/Parquet file.")] = None,
        item_col: Annotated[str, typer.Option("--item-col", help="table: the item id column.")] = "item",
        user_col: Annotated[str, typer.Option("--user-col", help="table: the user id column.")] = "user",
        columns: Annotated[Optional[list[str]], typer.Option("--column", help="table: a text column (repeatable).")] = None,
        encoder: Annotated[str, typer.Option("--encoder", help="Packaged default, a Hugging Face name or a local folder.")] = "all-MiniLM-L6-v2",
        max_length: Annotated[Optional[int], typer.Option("--max-length", help="Tokens per text (default: the encoder's limit).")] = None,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Texts per encoder batch.")] = 64,
        no_cache: Annotated[bool, typer.Option("--no-cache", help="Encode everything, read and write no cache.")] = False,
        show: Annotated[int, typer.Option("--show", help="Print the first N item texts.")] = 0,
        quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    ) -> None:
        """Encode every item text of a dataset (cached on disk; a second run encodes nothing)."""
        from rich.console import Console

        from fedrec.data.registry import canonical_name, load_dataset
        from fedrec.text.encoder import TextEncoder
        from fedrec.text.item_text import item_text_embeddings

        options = {}
        if canonical_name(dataset) in ("csv", "table"):
            options = dict(path=path, user_col=user_col, item_col=item_col, text_cols=list(columns or []))
        data = load_dataset(dataset, data_dir=data_dir, **options)
        result = item_text_embeddings(data, TextEncoder(encoder, max_length=max_length, batch_size=batch_size),
                                      use_cache=not no_cache, progress=not quiet)
        out = Console()
        for text in result.items.texts[:show]:
            out.print(text, highlight=False, markup=False)
        out.print(result.summary(), highlight=False, markup=False, soft_wrap=True)
        out.print(f"embeddings: {tuple(result.embeddings.shape)}", highlight=False)
