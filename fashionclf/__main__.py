from fashionclf.apps.cli import main

raise SystemExit(main())
