# Non-project Vivado flow: vfpga on the Alveo U250 with the UltraScale+ PCIe
# shell. Run from the repository root:
#
#   vivado -mode batch -source boards/alveo-u250/build.tcl [-tclargs DEVMEM_PAGES WRITE_CONFIRM]
#
# Writes target/alveo-u250/vfpga_u250.bit plus reports (utilization, timing).
# NOT RUN HERE (no Vivado in CI): docs/running-on-a-board.md lists what a lab
# must check first. Identity, BAR0 size and the MSI-X table/PBA offsets are read
# from rtl/generated/vfpga_regs.vh (generated from regmap.yaml), never typed here.

set part    xcu250-figd2104-2L-e
set repo    [file normalize [file join [file dirname [info script]] .. ..]]
set out     [file join $repo target alveo-u250]
set devmem_pages  [expr {[llength $argv] > 0 ? [lindex $argv 0] : 256}]
set write_confirm [expr {[llength $argv] > 1 ? [lindex $argv 1] : 1}]
file mkdir $out

# ---- constants from the generated include
proc vh {name} {
    global repo
    set f [open [file join $repo rtl generated vfpga_regs.vh]]
    set text [read $f]
    close $f
    if {![regexp "`define VFPGA_${name} \[0-9\]+'h(\[0-9a-fA-F\]+)" $text -> hex]} {
        error "VFPGA_$name not found in vfpga_regs.vh"
    }
    return [expr 0x$hex]
}
set vendor  [vh PCI_VENDOR_ID]
set device  [vh PCI_DEVICE_ID]
set class   [vh PCI_CLASS_CODE]
set rev     [vh PCI_REVISION]
set bar0    [vh BAR0_SIZE]
set tbl     [vh MSIX_TABLE_OFFSET]
set pba     [vh MSIX_PBA_OFFSET]
set nvec    [vh NUM_VECTORS]
set page    [vh PAGE_SIZE]
set bar2_kib [expr {$devmem_pages * $page / 1024}]
if {$bar2_kib >= 1024} {
    set bar2_scale Megabytes
    set bar2_size  [expr {$bar2_kib / 1024}]
} else {
    set bar2_scale Kilobytes
    set bar2_size  $bar2_kib
}
puts "vfpga: vendor [format %04x $vendor] device [format %04x $device] class [format %06x $class]\
      BAR0 [expr {$bar0 / 1024}] KiB, BAR2 $bar2_size $bar2_scale, MSI-X $nvec vectors,\
      table [format %x $tbl] PBA [format %x $pba], WRITE_CONFIRM $write_confirm"

set_part $part

# ---- the PCIe4 integrated block (IP pcie4_uscale_plus)
# Gen3 x8, 256-bit AXI-Stream at 250 MHz, DWORD-aligned, no straddling, one
# PF; BAR0 32-bit non-prefetchable, BAR2 64-bit prefetchable; MSI-X with the
# table and PBA in BAR0 served by the user design; no MSI; no extended tags.
set ipdir [file join $out ip]
file mkdir $ipdir
create_ip -name pcie4_uscale_plus -vendor xilinx.com -library ip -module_name vfpga_pcie4 -dir $ipdir
set_property -dict [list \
    CONFIG.mode_selection                 {Advanced} \
    CONFIG.PL_LINK_CAP_MAX_LINK_SPEED     {8.0_GT/s} \
    CONFIG.PL_LINK_CAP_MAX_LINK_WIDTH     {X8} \
    CONFIG.axisten_if_width               {256_bit} \
    CONFIG.axisten_freq                   {250} \
    CONFIG.AXISTEN_IF_RC_STRADDLE         {false} \
    CONFIG.axisten_if_enable_client_tag   {true} \
    CONFIG.extended_tag_field             {false} \
    CONFIG.pf0_dev_cap_max_payload        {256_bytes} \
    CONFIG.vendor_id                      [format %04X $vendor] \
    CONFIG.PF0_DEVICE_ID                  [format %04X $device] \
    CONFIG.PF0_REVISION_ID                [format %02X $rev] \
    CONFIG.PF0_CLASS_CODE                 [format %06X $class] \
    CONFIG.PF0_SUBSYSTEM_VENDOR_ID        [format %04X $vendor] \
    CONFIG.PF0_SUBSYSTEM_ID               [format %04X $device] \
    CONFIG.pf0_bar0_enabled               {true} \
    CONFIG.pf0_bar0_64bit                 {false} \
    CONFIG.pf0_bar0_prefetchable          {false} \
    CONFIG.pf0_bar0_scale                 {Kilobytes} \
    CONFIG.pf0_bar0_size                  [expr {$bar0 / 1024}] \
    CONFIG.pf0_bar2_enabled               {true} \
    CONFIG.pf0_bar2_64bit                 {true} \
    CONFIG.pf0_bar2_prefetchable          {true} \
    CONFIG.pf0_bar2_scale                 $bar2_scale \
    CONFIG.pf0_bar2_size                  $bar2_size \
    CONFIG.pf0_msi_enabled                {false} \
    CONFIG.pf0_msix_enabled               {true} \
    CONFIG.MSI_X_OPTIONS                  {User_MSI-X_Table} \
    CONFIG.PF0_MSIX_CAP_TABLE_SIZE        [format %03X [expr {$nvec - 1}]] \
    CONFIG.PF0_MSIX_CAP_TABLE_BIR         {BAR_0} \
    CONFIG.PF0_MSIX_CAP_TABLE_OFFSET      [format %08X $tbl] \
    CONFIG.PF0_MSIX_CAP_PBA_BIR           {BAR_0} \
    CONFIG.PF0_MSIX_CAP_PBA_OFFSET        [format %08X $pba] \
    CONFIG.PF0_INTERRUPT_PIN              {INTA} \
] [get_ips vfpga_pcie4]
generate_target all [get_ips vfpga_pcie4]
synth_ip [get_ips vfpga_pcie4]
report_property [get_ips vfpga_pcie4] -file [file join $out ip_properties.txt]

# ---- sources
read_verilog -sv [list \
    [file join $repo rtl vfpga_top.v] \
    [file join $repo rtl vfpga_bitmap.v] \
    [file join $repo rtl shell usp vfpga_usp_shell.v] \
    [file join $repo rtl shell usp vfpga_usp_cq.v] \
    [file join $repo rtl shell usp vfpga_usp_rq.v] \
    [file join $repo rtl shell usp vfpga_usp_msix.v] \
    [file join $repo rtl shell usp vfpga_usp_devmem.v] \
    [file join $repo boards alveo-u250 vfpga_u250_top.v] \
]
read_xdc [file join $repo boards alveo-u250 vfpga_u250.xdc]

# ---- implementation
synth_design -top vfpga_u250_top -part $part -include_dirs [list [file join $repo rtl]] \
    -generic DEVMEM_PAGES=$devmem_pages -generic WRITE_CONFIRM=$write_confirm
report_utilization -file [file join $out post_synth_utilization.txt]
opt_design
place_design
phys_opt_design
route_design
report_utilization -file [file join $out utilization.txt]
report_timing_summary -max_paths 20 -file [file join $out timing_summary.txt]
set wns [get_property SLACK [get_timing_paths -max_paths 1 -nworst 1 -setup]]
puts "vfpga: worst setup slack $wns ns"
if {$wns < 0} {
    puts "vfpga: TIMING NOT MET at 250 MHz (see timing_summary.txt); no bitstream written"
    exit 1
}
write_bitstream -force [file join $out vfpga_u250.bit]
puts "vfpga: wrote [file join $out vfpga_u250.bit]"
