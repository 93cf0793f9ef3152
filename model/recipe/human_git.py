"""Read files of a public git repository at a pinned commit (used by fetch_human.py).

A source is named by URL + commit only; where it lives on this machine is a CLI detail:
a bare git directory given with --git-dir (what the search tool's `fetch` leaves), or a
bare clone made here under the cache folder.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


class GitTree:
    """Files of one repository at one commit, read through `git cat-file --batch`."""

    def __init__(self, url: str, commit: str, git_dir: Path):
        self.url, self.commit, self.git_dir = url, commit, Path(git_dir)
        self._batch: subprocess.Popen | None = None

    def _git(self, *args: str) -> bytes:
        return subprocess.run(["git", f"--git-dir={self.git_dir}", *args],
                              check=True, capture_output=True).stdout

    def has_commit(self) -> bool:
        probe = subprocess.run(["git", f"--git-dir={self.git_dir}", "cat-file", "-e",
                                f"{self.commit}^{{commit}}"], capture_output=True)
        return probe.returncode == 0

    def list(self, prefix: str) -> list[str]:
        """Sorted paths of the files under `prefix` at the pinned commit."""
        out = self._git("ls-tree", "-r", "--name-only", self.commit, "--", prefix)
        return sorted(out.decode().splitlines())

    def read(self, path: str) -> bytes:
        if self._batch is None:
            self._batch = subprocess.Popen(
                ["git", f"--git-dir={self.git_dir}", "cat-file", "--batch"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._batch.stdin.write(f"{self.commit}:{path}\n".encode())
        self._batch.stdin.flush()
        header = self._batch.stdout.readline().decode().split()
        if len(header) != 3 or header[1] != "blob":
            raise FileNotFoundError(f"{self.url}@{self.commit}:{path} ({' '.join(header)})")
        data = self._batch.stdout.read(int(header[2]))
        self._batch.stdout.read(1)  # the newline git writes after each object
        return data

    def source(self, path: str) -> str:
        """How DATA.tsv names a file: URL @ commit : path."""
        return f"{self.url}@{self.commit}:{path}"


def open_tree(url: str, commit: str, git_dirs: dict[str, Path], clone_root: Path) -> GitTree:
    """A GitTree from a given local git dir, or from a bare clone of `url` made here."""
    key = url.removeprefix("https://github.com/")
    git_dir = git_dirs.get(key) or git_dirs.get(url)
    if git_dir is None:
        git_dir = clone_root / key.replace("/", "+")
        if not git_dir.exists():
            subprocess.run(["git", "clone", "--bare", "--quiet", url, str(git_dir)], check=True)
    tree = GitTree(url, commit, git_dir)
    if not tree.has_commit():  # a shallow snapshot or an old clone: ask for the commit itself
        subprocess.run(["git", f"--git-dir={git_dir}", "fetch", "--quiet", url, commit], check=True)
    return tree
