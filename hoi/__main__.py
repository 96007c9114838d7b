from hoi.cli import run

if __name__ == "__main__":  # worker processes are spawned and import this module again
    run()
