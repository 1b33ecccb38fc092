/* SPDX-License-Identifier: MIT */
/*
 * trampoline.S - AP start-up code. boot copies it to AP_TRAMPOLINE; a SIPI starts each AP
 * there in real mode (CS = AP_TRAMPOLINE >> 4, IP = 0). It goes from real mode straight to
 * long mode (no 32-bit stop, which the emulator handles fine) and jumps into the image.
 * Position-dependent: addresses inside it are computed for its copy.
 */
#include "guest.h"

#define TRAMP(sym)	(AP_TRAMPOLINE + (sym) - ap_trampoline)

	.section .rodata.trampoline, "a"
	.code16
	.globl ap_trampoline, ap_trampoline_end
ap_trampoline:
	cli
	cld
	jmp	1f

	.balign 8
tramp_gdt_ptr:				/* before its use so its address is known */
	.word	GDT_SIZE - 1
	.long	gdt

1:	xorw	%ax, %ax
	movw	%ax, %ds
	lgdtl	TRAMP(tramp_gdt_ptr)
	movl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	$pml4, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	$(CR0_PG | CR0_ET | CR0_PE), %eax	/* also clears INIT's CD and NW */
	movl	%eax, %cr0
	ljmpl	$KERNEL_CS, $ap_long_start
ap_trampoline_end:
