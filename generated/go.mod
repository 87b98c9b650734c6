module spawner.dev/generated

go 1.26.0
