from synthray.cli import main

raise SystemExit(main())
