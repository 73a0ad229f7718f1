from xlsr.cli import main

raise SystemExit(main())
