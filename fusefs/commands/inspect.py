"""``nommufs inspect``: superblock, features and counts, or one inode's layout."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fusefs.commands._common import add_image_arguments, open_from_args
from fusefs.vfs import resolve

NAME = "inspect"
HELP = "show an image's superblock, features and counts (or one inode's layout)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_image_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--inode", metavar="PATH", help="show the inode at PATH instead")


def _print_text(data: Any, indent: str = "") -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, dict | list) and value:
                print(f"{indent}{key}:")
                _print_text(value, indent + "  ")
            else:
                print(f"{indent}{key}: {value}")
    elif isinstance(data, list):
        for value in data:
            if isinstance(value, dict | list):
                print(f"{indent}-")
                _print_text(value, indent + "  ")
            else:
                print(f"{indent}- {value}")
    else:
        print(f"{indent}{data}")


def run(args: argparse.Namespace) -> int:
    with open_from_args(args) as fs:
        if args.inode is not None:
            data = fs.describe_inode(resolve(fs, args.inode))
        else:
            data = {"format": fs.format_name, **fs.describe()}
    if args.json:
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        _print_text(data)
    return 0
