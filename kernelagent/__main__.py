from kernelagent.cli import main

raise SystemExit(main())
