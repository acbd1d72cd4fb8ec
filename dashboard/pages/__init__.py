"""Full pages and their live partials, one module per page family."""
