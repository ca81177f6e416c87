"""The sort command line (python -m gdfut.shuffle.sort) given bad flags: each
is named (argparse's exit 2) before any cluster starts; a cluster that is
not there is said so, without a traceback."""
import re

import pytest

import gdfut
from gdfut.shuffle import sort
from helpers import child_processes


@pytest.mark.parametrize("flags, says", [
    (["--gib", "0"], "--gib must be a number > 0"),
    (["--gib", "nan"], "--gib must be a number > 0"),
    (["--maps", "0"], "--maps and --reducers must be >= 1"),
    (["--reducers", "-2"], "--maps and --reducers must be >= 1"),
    (["--records", "-5"], "--records must be >= 0"),
    (["--merge-factor", "0"], "--merge-factor must be >= 1"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--num-cpus", "0"], "--num-cpus must be > 0"),
    (["--address", "nohost"], "--address: address 'nohost' is not HOST:PORT"),
    (["--address", "127.0.0.1:99999"], "--address: .* is not HOST:PORT"),
    (["--object-store-memory", "-5"], "--object-store-memory must be > 0"),
    (["--spill-dir", "FILE"], "--spill-dir .* is not a directory"),
    (["--output-dir", "FILE"], "--output-dir .* is not a directory"),
    (["--output-dir", "FILE/sub"], "--output-dir .* not a writable directory"),
])
def test_sort_flags_are_checked(tmp_path, capsys, flags, says):
    afile = tmp_path / "file"
    afile.write_text("x")
    flags = [f.replace("FILE", str(afile)) for f in flags]
    with pytest.raises(SystemExit) as exit_:
        sort.main(["--no-progress", *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert re.search(says, err) and "Traceback" not in err, err
    assert not gdfut.is_initialized() and not child_processes()


def test_sort_with_no_head_there_says_so(capsys):
    assert sort.main(["--no-progress", "--json", "--address", "127.0.0.1:1"]) == 1
    captured = capsys.readouterr()
    assert "cannot reach the gdfut head at 127.0.0.1:1" in captured.err
    assert captured.out.strip().splitlines()[-1].startswith('{"ok": false')
    assert not gdfut.is_initialized()
