deep/a/b/c.go
