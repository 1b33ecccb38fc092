/* SPDX-License-Identifier: MIT */
/*
 * entry.S - how the guest gets from the PVH entry state to C in long mode: the Xen PVH
 * note that tells a loader where to start, the 32-bit entry, the AP landing point, the GDT,
 * the identity page tables (built by the assembler, so they cost nothing at boot) and the
 * interrupt stubs.
 */
#include "guest.h"

/*
 * XEN_ELFNOTE_PHYS32_ENTRY: godwit and QEMU (-kernel) find the 32-bit entry here. The
 * section is placed in its own PT_NOTE segment by guest.ld.
 */
	.section .note.Xen, "a", @note
	.balign 4
	.long 4			/* name size */
	.long 4			/* descriptor size */
	.long 18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.long pvh_start
	.balign 4

/*
 * PVH entry: 32-bit protected mode, paging off, flat segments, EBX = start_info.
 * Go straight to long mode; boot_main() copies start_info before anything else.
 */
	.section .text.boot, "ax", @progbits
	.code32
	.globl pvh_start
pvh_start:
	cli
	cld
	movl	%ebx, %esi
	lgdt	gdt_ptr			/* 32-bit lgdt reads the low half of the base */
	movl	%cr4, %eax
	orl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	$pml4, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	%cr0, %eax
	andl	$~(CR0_CD | CR0_NW), %eax	/* caches on, whatever the loader left */
	orl	$(CR0_PG | CR0_PE), %eax
	movl	%eax, %cr0
	ljmp	$KERNEL_CS, $long_start

	.code64
long_start:
	movw	$KERNEL_DS, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	leaq	cpu_stacks + STACK_SIZE(%rip), %rsp	/* cpu 0's stack */
	/*
	 * A loader zeroes .bss as the ELF header asks; do it again so one that only copies
	 * the file contents works too. The stacks are left out: they need no zeroing.
	 */
	leaq	__bss_start(%rip), %rdi
	leaq	__bss_end(%rip), %rcx
	subq	%rdi, %rcx
	shrq	$3, %rcx
	xorl	%eax, %eax
	rep stosq
	movl	%esi, %edi
	call	boot_main
1:	cli
	hlt
	jmp	1b

/*
 * APs arrive here in long mode from the real-mode trampoline. Taking a number with a locked
 * xadd both counts the AP for the BSP and picks its stack.
 */
	.globl ap_long_start
ap_long_start:
	movw	$KERNEL_DS, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	movl	$1, %eax
	lock xaddl %eax, ap_arrivals(%rip)
	incl	%eax			/* cpu number: the BSP is 0 */
	cmpl	$MAX_CPUS, %eax
	jae	2f
	movl	%eax, %edi
	movl	%eax, %ecx
	incl	%ecx
	shlq	$STACK_SHIFT, %rcx
	leaq	cpu_stacks(%rip), %rsp
	addq	%rcx, %rsp
	call	ap_main
2:	cli				/* no stack for this one: park it */
	hlt
	jmp	2b

/*
 * Interrupt handlers. Only the BSP's timer counts ticks (one writer, so a plain incq is
 * atomic enough for readers); the APs' timer only wakes them from hlt.
 */
	.text
	.globl isr_timer, isr_wake, isr_spurious, isr_nmi, isr_stubs
isr_timer:
	pushq	%rax
	incq	ticks(%rip)
	movq	lapic(%rip), %rax	/* through a register: 0xfee000b0 is no disp32 */
	movl	$0, LAPIC_EOI(%rax)
	popq	%rax
	iretq

isr_wake:
	pushq	%rax
	movq	lapic(%rip), %rax
	movl	$0, LAPIC_EOI(%rax)
	popq	%rax
	iretq

isr_spurious:			/* a spurious interrupt takes no EOI */
isr_nmi:			/* nothing sends NMIs on purpose; don't die of one */
	iretq

/*
 * One 16-byte stub per vector for everything else: push a zero error code where the CPU
 * pushes none, push the vector, and report. Exceptions are fatal in a test guest.
 */
	.balign 16
isr_stubs:
	.set	vec, 0
	.rept	256
	.balign	16
	.if !(vec == 8 || (vec >= 10 && vec <= 14) || vec == 17 || vec == 21 || vec == 29 || vec == 30)
	pushq	$0
	.endif
	pushq	$vec
	jmp	isr_common
	.set	vec, vec + 1
	.endr

isr_common:
	movq	%rsp, %rdi		/* vector, error, rip, cs, rflags, rsp, ss */
	andq	$-16, %rsp
	call	trap_report

/* Flat 64-bit code and data; accessed bits preset so loading them writes nothing. */
	.data
	.balign 16
	.globl gdt
gdt:
	.quad	0
	.quad	0x00af9b000000ffff	/* KERNEL_CS: 64-bit code */
	.quad	0x00cf93000000ffff	/* KERNEL_DS: flat data */
gdt_ptr:
	.word	GDT_SIZE - 1
	.quad	gdt

/*
 * Identity map of 0-4 GiB with 2 MiB pages; the LAPIC's page uncached. main.c adds page
 * directories for RAM above 4 GiB.
 */
	.section .data.pagetables, "aw", @progbits
	.balign 4096
	.globl pml4, pdpt
pml4:
	.quad	pdpt + PTE_P + PTE_W
	.fill	511, 8, 0
pdpt:
	.set	pdi, 0
	.rept	4
	.quad	pd + pdi * 4096 + PTE_P + PTE_W
	.set	pdi, pdi + 1
	.endr
	.fill	508, 8, 0
pd:
	.set	va, 0
	.rept	2048
	.if va == 0xfee00000
	.quad	va + PTE_P + PTE_W + PTE_PS + PTE_PWT + PTE_PCD
	.else
	.quad	va + PTE_P + PTE_W + PTE_PS
	.endif
	.set	va, va + 0x200000
	.endr

/* Per-vCPU stacks: left out of the .bss range boot zeroes. */
	.section .stack, "aw", @nobits
	.balign 4096
	.globl cpu_stacks
cpu_stacks:
	.skip	MAX_CPUS * STACK_SIZE
