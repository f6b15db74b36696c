"""Tasks shared by several families (a family's own task lives in its folder): the base and classification."""
