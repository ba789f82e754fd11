"""File-system helpers shared by every writer (atomic files and folders)."""

from jaxalign.io.atomic import (atomic_file, atomic_folder, atomic_path, check_destination, write_bytes_atomic,
                                write_json_atomic, write_text_atomic)

__all__ = ["atomic_file", "atomic_folder", "atomic_path", "check_destination", "write_bytes_atomic",
           "write_json_atomic", "write_text_atomic"]
