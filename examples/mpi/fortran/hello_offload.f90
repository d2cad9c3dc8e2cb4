! hello_offload in Fortran: each MPI rank leases a core, starts an executor with the
! example Black-Scholes library, prices a batch there (blocking) and another one
! non-blocking while it prices the first locally, and checks both against local prices.
!
!   mpifort rafi.f90 hello_offload.f90 $(pkg-config --libs rafi) -o hello_offload_f
!   RAFI_RESOURCE_MANAGER=… RAFI_CLIENT=… RAFI_CLIENT_SECRET=… mpirun -np 2 ./hello_offload_f
program hello_offload
    use mpi
    use rafi
    implicit none
    integer, parameter :: n = 64
    ! The function's input: n (a uint64), then S, K, T, r and sigma, n doubles each.
    real(c_double), target :: batch(1 + 5 * n), second(1 + 5 * n)
    real(c_double), target :: prices(n), prices2(n), expected(n), expected2(n)
    type(c_ptr) :: client, lease, alloc, request, buffer
    real(c_double), pointer :: in_place(:)
    integer(c_int) :: rc, bs, workers
    integer(c_size_t) :: out_len, out_len2, max_input
    integer :: ierr, rank, failures, total

    call MPI_Init(ierr)
    call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
    failures = 0

    call check(rafi_connect_env(client), "rafi_connect_env")
    call check(rafi_lease_create(client, 1_c_int, 300.0_c_double, lease), "rafi_lease_create")
    call check(rafi_alloc_create(lease, rafi_cstr("blackscholes"), alloc), "rafi_alloc_create")
    call check(rafi_function(alloc, rafi_cstr("blackscholes"), bs), "rafi_function")
    call check(rafi_alloc_info(alloc, max_input, workers), "rafi_alloc_info")

    call fill(batch, rank)
    call fill(second, rank + 100)
    call check(rafi_invoke(alloc, bs, c_loc(batch), c_sizeof(batch), c_loc(prices), &
        c_sizeof(prices), out_len), "rafi_invoke")
    call check(rafi_invoke_start(alloc, bs, c_loc(second), c_sizeof(second), c_loc(prices2), &
        c_sizeof(prices2), request), "rafi_invoke_start")
    call price_locally(batch, expected)
    call price_locally(second, expected2)
    call check(rafi_wait(request, out_len2), "rafi_wait")

    if (out_len /= c_sizeof(prices) .or. out_len2 /= c_sizeof(prices2)) failures = failures + 1
    if (maxval(abs(prices - expected)) > 1.0d-9) failures = failures + 1
    if (maxval(abs(prices2 - expected2)) > 1.0d-9) failures = failures + 1
    print '(a,i0,a,i0,a,es9.2)', 'rank ', rank, ': ', 2 * n, &
        ' options priced remotely, largest difference ', &
        max(maxval(abs(prices - expected)), maxval(abs(prices2 - expected2)))

    ! The same batch again from registered memory: built in place, sent without a copy.
    call check(rafi_buffer_create(alloc, c_sizeof(batch), buffer), "rafi_buffer_create")
    call c_f_pointer(rafi_buffer_data(buffer), in_place, [size(batch)])
    in_place = batch
    call check(rafi_invoke_buffer(alloc, bs, buffer, 0_c_size_t, c_sizeof(batch), &
        c_loc(prices2), c_sizeof(prices2), out_len2), "rafi_invoke_buffer")
    if (maxval(abs(prices2 - expected)) > 1.0d-9) failures = failures + 1
    call check(rafi_buffer_free(buffer), "rafi_buffer_free")
    print '(a,i0,a)', 'rank ', rank, ': a batch priced from a registered buffer'

    ! An error is a status and a message, not the end of the program.
    rc = rafi_invoke(alloc, bs, c_loc(batch), max_input + 1, c_loc(prices), &
        c_sizeof(prices), out_len)
    if (rc /= RAFI_ERR_TOO_LARGE) failures = failures + 1
    print '(a,i0,a,a)', 'rank ', rank, ': an oversize input: ', rafi_message()

    call check(rafi_alloc_free(alloc), "rafi_alloc_free")
    call check(rafi_lease_release(lease), "rafi_lease_release")
    call check(rafi_disconnect(client), "rafi_disconnect")

    call MPI_Reduce(failures, total, 1, MPI_INTEGER, MPI_SUM, 0, MPI_COMM_WORLD, ierr)
    if (rank == 0) then
        if (total == 0) then
            print '(a)', 'fortran hello_offload: all checks passed'
        else
            print '(a,i0,a)', 'fortran hello_offload: ', total, ' check(s) failed'
        end if
    end if
    call MPI_Bcast(total, 1, MPI_INTEGER, 0, MPI_COMM_WORLD, ierr)
    call MPI_Finalize(ierr)
    if (total /= 0) error stop 1

contains

    subroutine check(status, what)
        integer(c_int), intent(in) :: status
        character(len=*), intent(in) :: what
        integer :: ierr2
        if (status /= RAFI_OK) then
            print '(a,a,i0,a,a,a,a)', what, ' failed: ', status, ' (', rafi_strerror(status), &
                '): ', rafi_message()
            call MPI_Abort(MPI_COMM_WORLD, 1, ierr2)
        end if
    end subroutine

    subroutine fill(input, seed)
        real(c_double), intent(out) :: input(:)
        integer, intent(in) :: seed
        integer :: i
        input(1) = transfer(int(n, c_int64_t), 0.0_c_double)
        do i = 1, n
            input(1 + i) = 80.0d0 + mod(seed * 31 + i, 41)
            input(1 + n + i) = 90.0d0 + mod(seed + i, 23)
            input(1 + 2 * n + i) = 0.25d0 + 0.25d0 * mod(i, 8)
            input(1 + 3 * n + i) = 0.01d0 + 0.01d0 * mod(i, 5)
            input(1 + 4 * n + i) = 0.1d0 + 0.05d0 * mod(seed + i, 9)
        end do
    end subroutine

    subroutine price_locally(input, out)
        real(c_double), intent(in) :: input(:)
        real(c_double), intent(out) :: out(:)
        real(c_double) :: s, k, t, r, sigma, d1, d2
        integer :: i
        do i = 1, n
            s = input(1 + i); k = input(1 + n + i); t = input(1 + 2 * n + i)
            r = input(1 + 3 * n + i); sigma = input(1 + 4 * n + i)
            d1 = (log(s / k) + (r + 0.5d0 * sigma * sigma) * t) / (sigma * sqrt(t))
            d2 = d1 - sigma * sqrt(t)
            out(i) = s * 0.5d0 * erfc(-d1 / sqrt(2.0d0)) &
                - k * exp(-r * t) * 0.5d0 * erfc(-d2 / sqrt(2.0d0))
        end do
    end subroutine
end program hello_offload
