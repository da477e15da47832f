from exo.cli import run_process

run_process()
