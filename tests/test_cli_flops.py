import subprocess
import sys

from superclip import cli
from superclip.flops import flops_table


def test_flops_reproduce_paper_table3_within_one_percent():
    t = flops_table("SuperCLIP-ViT-L-16")
    for key, paper in (("vision_gmacs", 59.689), ("text_gmacs", 6.547), ("head_gmacs", 0.051),
                       ("head_share_percent", 0.077)):
        assert abs(t[key] - paper) / paper < 0.01, (key, t[key], paper)
    assert t["head_gmacs"] == 1024 * 49408 / 1e9  # width x V multiply-adds, exactly


def test_flops_b16_head_share():
    t = flops_table("SuperCLIP-ViT-B-16")
    assert t["head_gmacs"] == 768 * 49408 / 1e9
    assert abs(t["head_share_percent"] - 0.19) < 0.01


def test_flops_cli_prints_table(capsys):
    assert cli.main(["flops", "SuperCLIP-ViT-L-16"]) == 0
    out = capsys.readouterr().out
    assert "vision      59.647" in out and "head         0.051   (0.076% of the total)" in out


def test_console_script_error_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, "-m", "superclip.cli", "export", "/no/such.pt", "/tmp/x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "superclip export: error: checkpoint file not found: /no/such.pt"
