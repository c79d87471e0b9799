from fashionclf.cli import main

raise SystemExit(main())
