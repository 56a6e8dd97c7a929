from pxd.cli import main

main()
