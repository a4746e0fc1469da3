module example.com/tasker-go

go 1.21
