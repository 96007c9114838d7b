from hoi.cli import main

if __name__ == "__main__":  # worker processes are spawned and import this module again
    main()
