module github.com/september/bap-engine/client

go 1.18
