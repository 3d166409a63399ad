-- Two VMs from the same profile are independent machines.
local a = provium.create()
local b = provium.create()
a:boot({ memory = "256M" })
b:boot({ memory = "256M" })

a:write_file("/tmp/who", "a")
b:write_file("/tmp/who", "b")
assert_eq("a", a:read_file("/tmp/who"))
assert_eq("b", b:read_file("/tmp/who"))

-- shutdown_all powers off every VM this file created.
provium.shutdown_all()
