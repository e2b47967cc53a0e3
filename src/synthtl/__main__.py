from synthtl.cli import main

raise SystemExit(main())
