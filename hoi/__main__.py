from hoi.cli import main

main()
