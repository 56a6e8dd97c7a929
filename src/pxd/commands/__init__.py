"""One module per command, thin: a config in (pxd.configs), engine or API calls, report out.
cli.py dispatches here: score, purify, attack, zoo, train (train-density, train-clf) and the
bench package (bench, bench --speed); common.py holds what several share."""
