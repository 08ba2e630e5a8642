from pureebm.cli import main

main()
