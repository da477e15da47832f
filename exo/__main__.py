from exo.cli import main

raise SystemExit(main())
